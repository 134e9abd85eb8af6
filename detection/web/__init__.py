"""The portal's pages: dashboard, analysis pages and buttons, uploads, exports, forms."""
