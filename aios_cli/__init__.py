"""The programs on top of the services: the `aios` command, the local stack it starts,
the Triton launcher and the model build. Nothing below this package imports it."""
