"""Images and manifests, shared by training and serving: decoding, the model card's preprocessing, the
manifest reader. Neither ``serving`` nor ``training`` owns it, so neither has to import the other; it
needs no torch."""
