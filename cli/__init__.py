"""ringctl: the ringd command line."""
