"""Ray Data map stages: callable classes run in actor pools by stages.base.apply."""
