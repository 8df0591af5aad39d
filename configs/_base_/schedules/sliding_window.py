# The official TreeGRPO knobs: the window moves `shift` steps every `every` iterations.
schedule = dict(type='SlidingWindow', depth=3, k=2, shift=1, every=4, start_range=(0, 5))
