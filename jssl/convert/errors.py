class ConversionError(ValueError):
  """A checkpoint that does not fit the architecture; the message names the key(s)."""
