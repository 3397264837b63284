"""Alignment probing (SAIL part 1): how well can frozen vision and text encoders be aligned?"""
