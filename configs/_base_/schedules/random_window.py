# SDE window of `depth` steps starting at a random step each iteration; k children per node.
schedule = dict(type='RandomWindow', depth=3, k=2, start_range=(0, 5))
