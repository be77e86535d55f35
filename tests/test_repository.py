"""The repository stands on its own: no tracked file points at a path outside it (the material the project was
specified from lives beside a checkout, not in it), and the README stays a newcomer's page."""
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# written in pieces so that this file does not match itself
OUTSIDE = re.compile(r'\.\./' + 'shared|/work/' + r'(shared|main|\.library)|\.\./\.' + 'library')


def tracked_files():
  out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
  return [ROOT / name for name in out.decode().split('\0') if name]


def test_no_file_refers_to_paths_outside_the_repository():
  found = []
  for path in tracked_files():
    if not path.is_file():
      continue
    try:
      text = path.read_text()
    except UnicodeDecodeError:  # pictures
      continue
    found += [f'{path.relative_to(ROOT)}:{n}: {line.strip()}' for n, line in enumerate(text.splitlines(), 1)
              if OUTSIDE.search(line)]
  assert not found, '\n'.join(found)


def test_the_pattern_catches_what_it_is_for():
  for line in ['see ../' 'shared/design.md', '/work/' 'shared/reference/002.txt', '../.' 'library/README.md']:
    assert OUTSIDE.search(line), line
  assert not OUTSIDE.search('docs/architecture.md and ../launch/README.md')


def test_readme_is_short_and_starts_with_the_two_commands():
  lines = (ROOT / 'README.md').read_text().splitlines()
  assert len(lines) <= 120, len(lines)
  fence = lines.index('```bash')
  assert lines[fence + 3] == '```' and 'jssl.main --config=configs/simclr.py:demo' in lines[fence + 1]
  assert 'pytest' in lines[fence + 2]


@pytest.mark.parametrize('page', ['README.md', 'docs/evaluation.md'])
def test_the_demo_output_samples_show_the_figures_of_the_config_docstring(page):
  """The demo's figures have one source, configs/simclr.py's `Demo result`; the sample outputs must agree."""
  text = (ROOT / page).read_text()
  doc = (ROOT / 'configs' / 'simclr.py').read_text()
  result = re.search(r'Demo result: kNN top-1 ([\d.]+)% \(random init ([\d.]+)%\), linear probe ([\d.]+)% '
                     r'\(([\d.]+)%\)', doc)
  knn, knn_random, linear, linear_random = result.groups()
  assert re.search(rf'\nkNN +\| +{knn} \| +{knn_random}\n', text), f'{page} demo output: kNN row'
  assert re.search(rf'\nlinear probe \| +{linear} \| +{linear_random}\n', text), f'{page} demo output: linear row'
  if page == 'README.md':
    assert f'kNN (k=20) top-1: trained {knn}% | random init {knn_random}%' in text


def test_the_evaluation_page_sample_shows_the_figure_of_the_linear_demo():
  doc = (ROOT / 'configs' / 'eval' / 'linear.py').read_text()
  top1 = re.search(r"Demo result: top-1 ([\d.]+)% \(random init [\d.]+%\) on the SimCLR demo's backbone", doc).group(1)
  assert f'\nhead |   {top1} |  100.00\n' in (ROOT / 'docs' / 'evaluation.md').read_text()
