"""Methods from Google PAIR's `saliency` package: Blur IG and Guided IG."""
