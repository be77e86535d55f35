"""What the argparse tools share: a parser whose usage errors are one line, and `run`, which turns the errors a
user can cause (bad path, damaged file, bad config) into one line on stderr and exit code 2."""
import argparse
import sys


def fail(prog: str, message: str):
  print(f'{prog}: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(2)


class Parser(argparse.ArgumentParser):
  """argparse whose usage errors are one line; `description` (the tool's docstring) is printed as written, its
  example commands on their own lines."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

  def error(self, message):
    fail(self.prog, message)


def run(prog: str, fn, args):
  """fn(args), with user errors reported by `fail`."""
  from absl import logging
  from jssl.config import ConfigError
  from jssl.convert.errors import ConversionError
  from jssl.data.sources import DataNotFoundError
  logging.set_verbosity(logging.WARNING)  # orbax's INFO chatter
  try:
    return fn(args)
  except (ConversionError, ConfigError, DataNotFoundError) as e:
    fail(prog, str(e))
  except OSError as e:  # unwritable destination, full disk, ...
    fail(prog, f'{e.filename or ""}: {e.strerror or e}')
