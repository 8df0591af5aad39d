# Prompt alignment scored by the shipped toy classifier (a stand-in for CLIPScore): the mean
# probability of the prompt's shape, colour, background, size and position, in [0, 1].
reward = dict(type='ToyAlignmentReward', checkpoint=None)
