"""Connectors that come from plugins.

In the installed package this module is empty: plugins register their connectors through the entry-point
group `tinylmm.connectors`, loaded when a name is not found. In a saved checkpoint folder it holds the code of
the plugin connector the model uses (copied on save, its imports of tinylmm made relative), so that the folder
loads with `trust_remote_code=True` where the plugin is not installed.
"""

# Names of the connectors this file registers.
PLUGIN_CONNECTORS: tuple[str, ...] = ()
