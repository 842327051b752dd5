"""Serving: an HTTP API and a drag-and-drop web page over any saved, pretrained or exported model."""
