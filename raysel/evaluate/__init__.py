"""`raysel eval`: does a model fine-tuned on a selection beat one fine-tuned on all the data?

testsets: the five pairwise test sets of the IFD and IterSelectTune papers; winning: the verdicts of both
judging orders combined into win / tie / lose, and the winning score."""
