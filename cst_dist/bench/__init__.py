"""`cst bench ...`: the memory and time planner (plan.py)."""
