"""detection/web/: the pages, uploads, exports, incident thumbnails, the live page in a browser."""
