"""Test fixture: importing this plugin fails, as a plugin with a missing
dependency would. hal must list it with its error and carry on."""

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for

raise RuntimeError("hal-broken-import: this plugin is broken on purpose")
