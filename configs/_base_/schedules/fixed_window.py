schedule = dict(type='FixedWindow', start=0, depth=3, k=2)
