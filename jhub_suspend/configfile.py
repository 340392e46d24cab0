"""What the service and the node agent share as command-line applications: a config file to
load, and one to print (``--generate-config``, as jupyterhub-idle-culler has)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Unicode
from traitlets.config import Application


class ConfigFileApplication(Application):
    config_file = Unicode("", help="A Python or JSON traitlets config file to load.").tag(
        config=True
    )
    generate_config = Bool(
        False, help="Print a config file with every setting and its help, commented out, and exit."
    ).tag(config=True)

    def initialize(self, argv: Any = None) -> None:
        """Parse the command line; then print a config file and exit, or load `config_file`.
        Settings given on the command line win over the file's."""
        super().initialize(argv)
        if self.generate_config:
            print(self.generate_config_file())
            self.exit(0)
        if self.config_file:
            self.load_config_file(self.config_file)
            if argv is not None or self.cli_config:
                self.update_config(self.cli_config)
