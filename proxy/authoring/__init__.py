"""Policy authoring: `wicket policy test`, `wicket policy explain` and `wicket audit show`."""
