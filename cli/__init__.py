"""The `avatar` command: run the stack, check it, call an agent, manage admins and portraits."""
