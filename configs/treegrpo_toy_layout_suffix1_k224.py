# The layout tree with the one-step finish (treegrpo_toy_layout_suffix1.py) and 4 children per
# node at the last depth: k = 2, 2, 4, i.e. 16 leaves per prompt. With the one-step finish a leaf
# costs one forward, so the extra 8 leaves add 8 sampling forwards per prompt and no update
# forwards (the 4 children of a last-depth parent train from that parent's one forward).
_base_ = ['./treegrpo_toy_layout_suffix1.py']

schedule = dict(k=[2, 2, 4])
