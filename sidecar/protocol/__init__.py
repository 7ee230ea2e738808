"""Generated stubs for the BuildKit control API subset (see proto/). Do not edit."""
