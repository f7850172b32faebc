"""`raysel agree`: does a small scorer rank a corpus like the large one? (Superfiltering's claim, checked on
the user's own rows.) stats: the agreement statistics with bootstrap intervals."""

METRICS = ("spearman", "kendall", "top_jaccard", "top_recall", "filter_agreement")
"""The statistics agreement.json holds, each as {value, low, high} (here: no heavy imports for readers)."""
