"""Marshmallow schemas: API input and output, and the NFT metadata documents."""
