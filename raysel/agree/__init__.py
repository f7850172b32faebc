"""`raysel agree`: does a small scorer rank a corpus like the large one? (Superfiltering's claim, checked on
the user's own rows.) stats: the agreement statistics with bootstrap intervals."""
