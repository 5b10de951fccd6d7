"""Code the AIVtuber services share: settings, logging, the command line, wire messages."""
