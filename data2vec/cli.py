"""The one error path of every command-line tool: a bad input ends it with one line, no traceback.

Every script's `if __name__ == '__main__':` block is `cli.run(main)` (absl flags) or
`cli.run(main, parser='argparse')`. A user error (USER_ERRORS, a usage error, a bad flag or config
file) exits with status 1 and `Type: message` as the last line on stderr, the message naming the
field or file; Ctrl-C exits with status 130 and one line. Anything else is a bug and keeps its
traceback. `--verbosity=1` logs the traceback of a user error too.
"""
import contextlib
import os
import subprocess
import sys
import tempfile

from absl import app, flags, logging

# Errors whose message says what to fix: bad config, data or checkpoint files, a non-finite loss,
# a collapse, an unimplemented pipeline, device memory, a failed external command (apt).
USER_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError, ImportError,
               subprocess.CalledProcessError)
INTERRUPTED = 130  # the shell's status of a program stopped by SIGINT
MAX_LINES = 10  # of a message joined into one line (XLA's out-of-memory reports run to pages)


def one_line(message):
  """`message` on one line; of an embedded traceback (config files) only the error is kept."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  if 'Traceback (most recent call last):' in lines:
    lines = lines[:lines.index('Traceback (most recent call last):')] + lines[-1:]
  if len(lines) > MAX_LINES:
    lines = lines[:MAX_LINES] + [f'... ({len(lines) - MAX_LINES} more lines)']
  return ' '.join(lines)


@contextlib.contextmanager
def one_line_errors(prefix=''):
  """Exits with `{prefix}Type: message` on stderr for USER_ERRORS and usage errors, with
  `{prefix}interrupted` and status 130 on Ctrl-C; also a decorator."""
  try:
    yield
  except (*USER_ERRORS, app.UsageError) as e:
    logging.debug('traceback:', exc_info=True)
    sys.exit(f'{prefix}{type(e).__name__}: {one_line(e)}')
  except KeyboardInterrupt as e:
    print(f'{prefix}interrupted' + (f': {one_line(e)}' if str(e) else ''), file=sys.stderr)
    sys.exit(INTERRUPTED)


def check_writable(path, flag):
  """Raises ValueError unless the folder `path` can be written: it is a folder, or can be made in
  its nearest existing parent. Tried with a nameless file, so permission bits, read-only mounts
  and root all count; a tool checks its outputs so before any long computation."""
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f'{flag} {path}: {existing} is a file, not a folder')
  try:
    tempfile.TemporaryFile(dir=existing).close()
  except OSError as e:
    raise ValueError(f'{flag} {path}: cannot write in {existing} ({e.strerror})') from None


def _fail(message):
  sys.exit(f'FATAL Flags parsing error: {one_line(message)}')


def parse_flags(argv):
  """absl's flag parsing where every bad flag is one line: an unknown --config.x key, a config
  file that does not exist or raises (e.g. an unknown variant), a missing required flag."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(e)
  except (KeyError, AttributeError) as e:  # config_flags: an override of a key the config lacks
    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(message))
      e = e.args[0]
    _fail(f'a --config override names an unknown key: {e.args[0] if e.args else e}')
  except OSError as e:  # config_flags: overrides of a config file that did not load
    _fail(e)
  # A config file that did not load is only reported when its value is first used: now.
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if type(flag.value).__name__ == '_ErrorConfig':  # config_flags' stand-in
      _fail(f'--{name}: {vars(flag.value)["_error"]}')
  return remaining


def run(main, *, parser='absl', prefix=''):
  """Runs `main` under one_line_errors: `app.run(main)` with parse_flags (parser='absl'), or
  `main()` parsing its own arguments (parser='argparse')."""
  if parser == 'argparse':
    with one_line_errors(prefix):
      main()
    return

  def guarded(argv):
    with one_line_errors(prefix):
      return main(argv)

  app.run(guarded, flags_parser=parse_flags)
