"""The linear classification task on Places205 (`linear_places205`, places205.py) and its
multi-head trainer over a frozen trunk (heads.py)."""

NAME = "linear_places205"  # the name the task is registered and configured under
