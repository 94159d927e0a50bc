"""The built-in long-tailed reasoning task: 14 small skills, each solved step by step by a program.

Every domain has a generator (random input text) and a solver that parses any input of the domain
and writes a short, formulaic rationale and the answer. The pool's domain sizes follow Zipf's law
over the order of ``BUILTIN_DOMAINS`` (head first), so the last domains are rare. Inputs stay
short and numbers small so that a student of about a million parameters can learn the head
domains on a CPU in minutes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from domdistill.data.example import DomainDataset, DomainExample
from domdistill.errors import InputError

WORDS = (
    "apple banana cat dog table chair river stone house green paper music tiger lemon water "
    "bread cloud pencil window garden rabbit orange planet summer winter yellow purple silver "
    "rocket jungle castle dragon forest butter candle doctor island kitten letter mirror needle "
    "pillow ribbon saddle tomato turtle violin wagon zebra hello world sun moon star tree bird "
    "fish frog lion bear wolf goat duck milk rice salt corn bean seed leaf rose lamp book pen "
    "cup box bag hat shoe sock coat door wall roof road city town farm boat ship car bus train"
).split()
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
UNITS = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("h", "min"): 60, ("min", "s"): 60}


def _digits_add(a: int, b: int) -> str:
    """Column addition of two numbers below 100, ones then tens."""
    ones = a % 10 + b % 10
    carry = ones // 10
    steps = [f"Ones: {a % 10} + {b % 10} = {ones}" + (", carry 1." if carry else ".")]
    tens = a // 10 + b // 10 + carry
    steps.append(f"Tens: {a // 10} + {b // 10}" + (" + 1" if carry else "") + f" = {tens}.")
    return " ".join(steps)


def _digits_sub(a: int, b: int) -> str:
    """Column subtraction ``a - b`` (``a >= b``, both below 100), ones then tens."""
    borrow = a % 10 < b % 10
    top = a % 10 + (10 if borrow else 0)
    steps = [f"Ones: {top} - {b % 10} = {top - b % 10}" + (", borrow 1." if borrow else ".")]
    steps.append(f"Tens: {a // 10} - {b // 10}" + (" - 1" if borrow else "")
                 + f" = {a // 10 - b // 10 - int(borrow)}.")
    return " ".join(steps)


# --- generators: rng -> input text ---------------------------------------------------------------

def _gen_addition(rng: random.Random) -> str:
    return f"Add {rng.randint(1, 99)} and {rng.randint(1, 99)}."


def _gen_comparison(rng: random.Random) -> str:
    a, b = rng.sample(range(1, 100), 2)
    return f"Which is larger: {a} or {b}?"


def _gen_subtraction(rng: random.Random) -> str:
    a = rng.randint(10, 99)
    return f"Subtract {rng.randint(1, a)} from {a}."


def _gen_parity(rng: random.Random) -> str:
    return f"Is {rng.randint(1, 999)} even or odd?"


def _gen_sorting(rng: random.Random) -> str:
    nums = rng.sample(range(1, 10), rng.choice((3, 4)))
    return f"Sort {', '.join(map(str, nums))} from smallest to largest."


def _gen_counting(rng: random.Random) -> str:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(LETTERS)
    return f"How many times does '{letter}' appear in '{word}'?"


def _gen_reversal(rng: random.Random) -> str:
    return f"Reverse the word '{rng.choice(WORDS)}'."


def _gen_unit_conversion(rng: random.Random) -> str:
    src, dst = rng.choice(sorted(UNITS))
    return f"Convert {rng.randint(1, 12)} {src} to {dst}."


def _gen_multiplication(rng: random.Random) -> str:
    return f"Multiply {rng.randint(2, 19)} by {rng.randint(2, 9)}."


def _gen_rounding(rng: random.Random) -> str:
    return f"Round {rng.randint(11, 99)} to the nearest ten."


def _gen_word_length(rng: random.Random) -> str:
    return f"How many letters are in '{rng.choice(WORDS)}'?"


def _gen_letter_shift(rng: random.Random) -> str:
    k = rng.randint(1, 3)
    return f"What letter is {k} after {rng.choice(LETTERS[:-k])}?"


def _gen_weekday(rng: random.Random) -> str:
    k = rng.randint(1, 6)
    return f"What day is {k} day{'s' if k > 1 else ''} after {rng.choice(DAYS)}?"


def _gen_digit_sum(rng: random.Random) -> str:
    return f"What is the sum of the digits of {rng.randint(10, 99)}?"


# --- solvers: parsed numbers/words -> (rationale, answer) -----------------------------------------

def _solve_addition(a: str, b: str) -> tuple[str, str]:
    x, y = int(a), int(b)
    return f"{_digits_add(x, y)} {x} + {y} = {x + y}.", str(x + y)


def _solve_comparison(a: str, b: str) -> tuple[str, str]:
    x, y = int(a), int(b)
    big = max(x, y)
    if x == y:
        return f"{x} and {y} are equal.", str(x)
    if x // 10 != y // 10:
        sign = ">" if x // 10 > y // 10 else "<"
        return f"Tens: {x // 10} {sign} {y // 10}. So {big} is larger.", str(big)
    sign = ">" if x > y else "<"
    return f"Tens are equal. Ones: {x % 10} {sign} {y % 10}. So {big} is larger.", str(big)


def _solve_subtraction(b: str, a: str) -> tuple[str, str]:
    x, y = int(a), int(b)
    if y > x:
        return f"{x} - {y} = {x - y}.", str(x - y)
    return f"{_digits_sub(x, y)} {x} - {y} = {x - y}.", str(x - y)


def _solve_parity(n: str) -> tuple[str, str]:
    last = int(n) % 10
    kind = "even" if last % 2 == 0 else "odd"
    return f"The last digit is {last}. {last} is {kind}.", kind


def _solve_sorting(nums: str) -> tuple[str, str]:
    values = sorted(int(v) for v in re.split(r"\s*,\s*", nums.strip()))
    order = ", then ".join(map(str, values[1:]))
    return f"Smallest is {values[0]}, then {order}.", ", ".join(map(str, values))


def _solve_counting(letter: str, word: str) -> tuple[str, str]:
    hits = [c for c in word if c == letter]
    found = " ".join(hits) if hits else "none"
    return f"Letters: {' '.join(word)}. Matches: {found}. Count: {len(hits)}.", str(len(hits))


def _solve_reversal(word: str) -> tuple[str, str]:
    return f"Letters: {' '.join(word)}. Backwards: {' '.join(reversed(word))}.", word[::-1]


def _solve_unit_conversion(n: str, src: str, dst: str) -> tuple[str, str]:
    factor = UNITS.get((src, dst))
    if factor is None:
        raise InputError(f"cannot convert {src} to {dst} (known: "
                         f"{', '.join(f'{a}->{b}' for a, b in UNITS)})", field="input")
    return f"1 {src} = {factor} {dst}. {n} x {factor} = {int(n) * factor}.", str(int(n) * factor)


def _solve_multiplication(a: str, b: str) -> tuple[str, str]:
    x, y = int(a), int(b)
    if x < 10 or y >= 10:
        return f"{x} x {y} = {x * y}.", str(x * y)
    tens, ones = x - x % 10, x % 10
    return (f"{tens} x {y} = {tens * y}. {ones} x {y} = {ones * y}. "
            f"{tens * y} + {ones * y} = {x * y}.", str(x * y))


def _solve_rounding(n: str) -> tuple[str, str]:
    x = int(n)
    ones, down = x % 10, x - x % 10
    if ones >= 5:
        return f"Ones digit {ones} >= 5, so round up to {down + 10}.", str(down + 10)
    return f"Ones digit {ones} < 5, so round down to {down}.", str(down)


def _solve_word_length(word: str) -> tuple[str, str]:
    return f"Letters: {' '.join(word)}. Count: {len(word)}.", str(len(word))


def _solve_letter_shift(k: str, letter: str) -> tuple[str, str]:
    start, steps = LETTERS.index(letter), int(k)
    if start + steps >= len(LETTERS):
        raise InputError(f"no letter comes {steps} after {letter!r}", field="input")
    path = LETTERS[start + 1:start + steps + 1]
    return f"After {letter}: {', '.join(path)}.", path[-1]


def _solve_weekday(k: str, day: str) -> tuple[str, str]:
    start = DAYS.index(day.capitalize())
    path = [DAYS[(start + i) % 7] for i in range(1, int(k) + 1)]
    return f"After {DAYS[start]}: {', '.join(path)}.", path[-1]


def _solve_digit_sum(n: str) -> tuple[str, str]:
    digits = [int(c) for c in n]
    return f"{' + '.join(map(str, digits))} = {sum(digits)}.", str(sum(digits))


_WORD = r"'([a-z]+)'"
_DAY = "(" + "|".join(DAYS) + ")"
Solver = Callable[..., tuple[str, str]]
# domain -> (input pattern, generator, solver); head domain first, rarest last.
_DOMAINS: dict[str, tuple[str, Callable[[random.Random], str], Solver]] = {
    "addition": (r"Add (\d{1,2}) and (\d{1,2})\.", _gen_addition, _solve_addition),
    "comparison": (r"Which is larger: (\d{1,2}) or (\d{1,2})\?", _gen_comparison, _solve_comparison),
    "subtraction": (r"Subtract (\d{1,2}) from (\d{1,2})\.", _gen_subtraction, _solve_subtraction),
    "parity": (r"Is (\d+) even or odd\?", _gen_parity, _solve_parity),
    "sorting": (r"Sort (\d+(?:\s*,\s*\d+)+) from smallest to largest\.", _gen_sorting, _solve_sorting),
    "counting": (rf"How many times does '([a-z])' appear in {_WORD}\?", _gen_counting, _solve_counting),
    "reversal": (rf"Reverse the word {_WORD}\.", _gen_reversal, _solve_reversal),
    "unit_conversion": (r"Convert (\d+) ([a-z]+) to ([a-z]+)\.", _gen_unit_conversion,
                        _solve_unit_conversion),
    "multiplication": (r"Multiply (\d{1,2}) by (\d)\.", _gen_multiplication, _solve_multiplication),
    "rounding": (r"Round (\d{1,2}) to the nearest ten\.", _gen_rounding, _solve_rounding),
    "word_length": (rf"How many letters are in {_WORD}\?", _gen_word_length, _solve_word_length),
    "letter_shift": (r"What letter is (\d) after ([a-z])\?", _gen_letter_shift, _solve_letter_shift),
    "weekday": (rf"What day is (\d) days? after {_DAY}\?", _gen_weekday, _solve_weekday),
    "digit_sum": (r"What is the sum of the digits of (\d+)\?", _gen_digit_sum, _solve_digit_sum),
}
BUILTIN_DOMAINS: list[str] = list(_DOMAINS)


def _domain(domain: str) -> tuple[str, Callable[[random.Random], str], Solver]:
    if domain not in _DOMAINS:
        raise InputError(f"unknown built-in domain {domain!r} (known: {', '.join(BUILTIN_DOMAINS)})",
                         field="domain")
    return _DOMAINS[domain]


def solve(domain: str, input_text: str) -> tuple[str, str]:
    """(rationale, answer) for any input of ``domain``; the rationale holds the steps only."""
    pattern, _, solver = _domain(domain)
    match = re.fullmatch(pattern, input_text.strip(), flags=re.IGNORECASE)
    if match is None:
        raise InputError(f"input {input_text!r} is not a {domain} question "
                         f"(expected text matching {pattern!r})", field="input")
    return solver(*(g.lower() if g.isalpha() else g for g in match.groups()))


def make_example(domain: str, rng: random.Random, id: str) -> DomainExample:
    """A new random example of ``domain`` with its program-written rationale and answer."""
    _, generate, _ = _domain(domain)
    text = generate(rng)
    rationale, answer = solve(domain, text)
    return DomainExample(id=id, domain=domain, input=text, answer=answer, rationale=rationale,
                         metadata={"source": "builtin"})


def zipf_counts(size: int, n_domains: int, alpha: float) -> list[int]:
    """Split ``size`` over ranks 1..n in proportion to ``rank**-alpha`` (largest remainder)."""
    weights = [r ** -alpha for r in range(1, n_domains + 1)]
    total = sum(weights)
    exact = [size * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(n_domains), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def builtin_dataset(size: int = 2000, alpha: float = 1.2, seed: int = 0) -> DomainDataset:
    """The long-tailed pool: domain sizes follow Zipf(``alpha``) in ``BUILTIN_DOMAINS`` order."""
    if size < 1 or alpha < 0:
        raise InputError(f"builtin pool needs size >= 1 and alpha >= 0 (got {size}, {alpha})",
                         field="data.builtin_size")
    rng = random.Random(seed)
    examples = [make_example(domain, rng, f"builtin-{domain}-{i:05d}")
                for domain, n in zip(BUILTIN_DOMAINS, zipf_counts(size, len(BUILTIN_DOMAINS), alpha))
                for i in range(n)]
    rng.shuffle(examples)
    return DomainDataset(examples, name="builtin")


MAX_TEST_PER_DOMAIN = 10_000


def builtin_test_set(per_domain: int = 30, seed: int = 1, pool: DomainDataset | None = None,
                     tries: int = 50) -> DomainDataset:
    """A balanced test set; inputs avoid ``pool`` (default: the default pool) and repeats.

    A domain whose inputs are too few to stay disjoint (letter shifts, weekdays) falls back to
    inputs seen in the pool after ``tries`` draws per example, and marks them ``in_pool``.
    """
    if not 1 <= per_domain <= MAX_TEST_PER_DOMAIN:
        raise InputError(f"the built-in task makes 1 to {MAX_TEST_PER_DOMAIN:,} test examples per "
                         f"domain (got {per_domain:,})", field="data.max_test_per_domain")
    pool = builtin_dataset() if pool is None else pool
    seen = {(ex.domain, ex.input) for ex in pool}
    rng = random.Random(seed)
    examples: list[DomainExample] = []
    for domain in BUILTIN_DOMAINS:
        _, generate, _ = _domain(domain)
        taken: set[str] = set()
        for i in range(per_domain):
            text = generate(rng)
            for _ in range(tries):
                if (domain, text) not in seen and text not in taken:
                    break
                text = generate(rng)
            taken.add(text)
            rationale, answer = solve(domain, text)
            examples.append(DomainExample(
                id=f"builtin-test-{domain}-{i:04d}", domain=domain, input=text, answer=answer,
                rationale=rationale,
                metadata={"source": "builtin", "in_pool": (domain, text) in seen}))
    return DomainDataset(examples, name="builtin-test")
