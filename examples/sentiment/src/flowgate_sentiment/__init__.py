"""An example flowgate extension: the ``sentiment`` feature and the ``Shout`` node type."""
