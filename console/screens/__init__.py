"""The console's screens: main, contact detail, confirmation and help."""
