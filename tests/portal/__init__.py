"""portal/: settings, the project's pages and servers, production and deploy files, request
bodies, the layout rule, the docs."""
