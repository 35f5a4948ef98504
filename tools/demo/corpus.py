#!/usr/bin/env python3
"""Seeded synthetic multi-skill corpus and task suite of the Routescope demo model.

Skills (answers are checkable): add, sub, compare, count, reverse, sort, convert.

Every problem has a canonical key (e.g. ("add", 47, 38) with the operands sorted, ("count", word, letter),
("reverse", string)). The key's SHA-256 picks a split, so the same problem can never land in two splits whatever
the template or option order:
    bucket = int(sha256(key)[:8], 16) % 100
    0..9 eval   10..19 reference   20..24 generative   25..29 dev (monitoring during training)   30..99 train
`check_disjoint` verifies it again on the written files (keys and prompt texts).

Formats (the task-suite prompts use exactly the training formats):
    generative  "Q: <question>\nA: <answer>"                      (prompt = up to "A:", answer after one space)
    statement   "<sentence stating the fact>"                      (training only)
    multiple choice
                "Question: <question>\nA. <o1>\nB. <o2>\nC. <o3>\nD. <o4>\nAnswer: <L>"
                (prompt = up to "Answer:", the next token is " A".." D", ids 256..259)
Each training example is followed by <|endoftext|>.

Usage:
    corpus.py train --out .cache/demo/train.jsonl [--examples N] [--seed S]
    corpus.py suite --out media/tasks [--seed S] [--eval-per-skill 50] [--ref-per-skill 50] [--gen-per-skill 16]
    corpus.py prompts --out media/demo.prompts.md [--seed S]
    corpus.py check --train .cache/demo/train.jsonl --suite media/tasks
"""
import argparse
import hashlib
import json
import os
import random
import sys

SKILLS = ["add", "sub", "compare", "count", "reverse", "sort", "convert"]
LETTERS = "ABCD"
EOS = "<|endoftext|>"

WORDS = """
apple table river stone light water house paper money music green happy dream bread chair plant tiger horse
mouse cloud storm night sound smile heart earth ocean beach grass flower garden window letter number orange
yellow purple silver golden winter summer spring autumn market school teacher doctor pencil rabbit turtle
monkey banana cherry lemon melon grape peach carrot potato tomato onion pepper butter cheese coffee sugar
salt honey candle mirror pillow blanket basket bottle button camera castle circle corner cotton crystal dinner
dragon engine family farmer finger forest friend guitar hammer island jacket kitten ladder lizard magnet
marble meadow needle parrot pirate planet pocket puzzle rocket saddle shadow silver sister spider stairs
street sunset thunder ticket tunnel valley velvet wallet wizard wonder yogurt zebra anchor arrow bridge
canvas desert feather glacier harbor jungle kettle lantern lobster mammal nectar noodle oyster pebble
quartz riddle season signal tablet temple timber violin walnut whistle barrel berry cabin cactus comet
dolphin falcon goose hippo jelly koala llama moose otter panda raven shark snail swan walrus
book tree bird fish frog star moon sun rain snow wind fire road ship boat car bus train door wall roof
hand foot nose ear eye hair milk egg cake rice soup tea corn bean nut seed leaf root rose lily oak pine
cat dog cow pig hen owl bee ant bat fox elk yak emu
balloon cookie hallway jigsaw kayak lemonade mission pepper rattle scissors seventeen tattoo assessment
committee bookkeeper mississippi banana strawberry coffee address success millennium possession
""".split()
WORDS = sorted(set(WORDS))

UNITS = [  # (from, to, factor)
    ("km", "meters", 1000), ("meters", "centimeters", 100), ("kg", "grams", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("feet", "inches", 12),
    ("liters", "milliliters", 1000), ("dollars", "cents", 100), ("dozens", "items", 12), ("years", "months", 12),
]

SPLITS = (("eval", 0, 10), ("reference", 10, 20), ("generative", 20, 25), ("dev", 25, 30), ("train", 30, 100))


def bucket(key):
    h = hashlib.sha256(repr(key).encode()).hexdigest()
    return int(h[:8], 16) % 100


def split_of(key):
    b = bucket(key)
    for name, lo, hi in SPLITS:
        if lo <= b < hi:
            return name
    raise AssertionError


# ------------------------------------------------------------------------------------------------------------
# Problems. Each sampler returns a dict: skill, key, question (str), answer (str), distractors (list of str,
# plausible wrong answers), statement (str), and for multiple choice optionally mc_question / mc_options.
# ------------------------------------------------------------------------------------------------------------

def _operand(rng):
    """2 digits (75%) or 3 digits (25%)."""
    d = 2 if rng.random() < 0.75 else 3
    return rng.randint(10 ** (d - 1), 10 ** d - 1)


def _num_distractors(rng, ans, extra=()):
    c = set(extra)
    for d in (1, 2, 10, 20, 100, 9, 11):
        c.add(ans + d)
        c.add(ans - d)
    s = str(ans)
    if len(s) >= 2 and s[-1] != s[-2]:
        c.add(int(s[:-2] + s[-1] + s[-2]))  # last two digits swapped
    c = sorted(x for x in c if x >= 0 and x != ans)
    return [str(x) for x in c]


def p_add(rng):
    a, b = _operand(rng), _operand(rng)
    ans = a + b
    q = rng.choice([
        "What is {a} + {b}?", "What is the sum of {a} and {b}?", "Add {a} and {b}.", "Calculate {a} plus {b}.",
        "How much is {a} + {b}?", "If you have {a} apples and get {b} more, how many apples do you have?",
    ]).format(a=a, b=b)
    st = rng.choice(["{a} + {b} = {c}", "The sum of {a} and {b} is {c}.", "{a} plus {b} equals {c}."])
    return dict(skill="add", key=("add", min(a, b), max(a, b)), question=q, answer=str(ans),
                distractors=_num_distractors(rng, ans, [abs(a - b)]), statement=st.format(a=a, b=b, c=ans))


def p_sub(rng):
    a, b = _operand(rng), _operand(rng)
    if a < b:
        a, b = b, a
    if a == b:
        a += 1
    ans = a - b
    q = rng.choice([
        "What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} take away {b}?",
        "A box holds {a} pens. {b} are taken out. How many pens are left?", "Calculate {a} - {b}.",
    ]).format(a=a, b=b)
    st = rng.choice(["{a} - {b} = {c}", "{a} minus {b} is {c}.", "The difference of {a} and {b} is {c}."])
    return dict(skill="sub", key=("sub", a, b), question=q, answer=str(ans),
                distractors=_num_distractors(rng, ans, [a + b]), statement=st.format(a=a, b=b, c=ans))


def _close_numbers(rng, n):
    """n distinct numbers of 2-4 digits: usually the same length with random digits; sometimes sharing the leading
    digit (harder), sometimes of different lengths (easier). For n > 2 (the multiple-choice form, whose options are
    the numbers) the leading digits are all different (see make_options)."""
    r = rng.random()
    out = set()
    if n > 2:
        leads = rng.sample("123456789", n)
        same_len = rng.random() < 0.7
        d0 = rng.randint(2, 4)
        for lead in leads:
            d = d0 if same_len else rng.randint(2, 4)
            out.add(int(lead + "".join(rng.choice("0123456789") for _ in range(d - 1))))
    elif r < 0.25:
        while len(out) < n:
            out.add(rng.randint(10, 9999))
    else:
        d = rng.randint(2, 4)
        lead = rng.randint(1, 9)
        while len(out) < n:
            x = rng.randint(10 ** (d - 1), 10 ** d - 1)
            if r < 0.45:  # shared leading digit
                x = int(str(lead) + str(x)[1:])
            out.add(x)
    out = list(out)
    rng.shuffle(out)
    return out


def p_compare(rng, n=2):
    nums = _close_numbers(rng, n)
    largest = rng.random() < 0.5
    ans = max(nums) if largest else min(nums)
    if n == 2:
        a, b = nums
        if largest:
            q = rng.choice(["Which is larger: {a} or {b}?", "Which number is bigger, {a} or {b}?",
                            "Which is greater, {a} or {b}?"])
        else:
            q = rng.choice(["Which is smaller: {a} or {b}?", "Which number is less, {a} or {b}?",
                            "Which is lower, {a} or {b}?"])
        q = q.format(a=a, b=b)
        st = ("{m} is larger than {o}." if largest else "{m} is smaller than {o}.").format(
            m=ans, o=b if ans == a else a)
    else:
        q = rng.choice(["Which number is the largest?", "Which of these numbers is the biggest?"] if largest else
                       ["Which number is the smallest?", "Which of these numbers is the lowest?"])
        st = ("The largest of {l} is {m}." if largest else "The smallest of {l} is {m}.").format(
            l=", ".join(map(str, nums)), m=ans)
    return dict(skill="compare", key=("compare", n, "max" if largest else "min", tuple(sorted(nums))),
                question=q, answer=str(ans), distractors=[str(x) for x in nums if x != ans], statement=st,
                fixed_options=(n == 4))


def _word(rng, lo, hi):
    if rng.random() < 0.5:
        ws = [w for w in WORDS if lo <= len(w) <= hi]
        return rng.choice(ws)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(lo, hi)))


def p_count(rng):
    w = _word(rng, 3, 10)
    if rng.random() < 0.75:
        c = rng.choice(w)
    else:
        c = rng.choice([x for x in "abcdefghijklmnopqrstuvwxyz" if x not in w])
    ans = w.count(c)
    q = rng.choice([
        "How many times does the letter '{c}' appear in '{w}'?", "How many '{c}' are in the word '{w}'?",
        "Count the letter {c} in {w}.", "In the word '{w}', how many times does '{c}' occur?",
    ]).format(c=c, w=w)
    st = rng.choice(["The letter '{c}' appears {n} times in '{w}'.", "'{w}' contains {n} of the letter {c}."])
    dis = [str(x) for x in range(0, max(6, ans + 3)) if x != ans]
    return dict(skill="count", key=("count", w, c), question=q, answer=str(ans), distractors=dis,
                statement=st.format(c=c, w=w, n=ans))


def _perturb(rng, s, n_tries=30):
    """Near misses of string s: adjacent swaps, one replaced letter, rotations."""
    out = set()
    alphabet = "0123456789" if s.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    for _ in range(n_tries):
        t = list(s)
        r = rng.random()
        if r < 0.5 and len(t) > 1:
            i = rng.randrange(len(t) - 1)
            t[i], t[i + 1] = t[i + 1], t[i]
        elif r < 0.8:
            t[rng.randrange(len(t))] = rng.choice(alphabet)
        else:
            t = t[1:] + t[:1]
        x = "".join(t)
        if x != s:
            out.add(x)
    return sorted(out)


def p_reverse(rng):
    s = _word(rng, 3, 7)
    while s == s[::-1]:
        s = _word(rng, 3, 7)
    ans = s[::-1]
    q = rng.choice(["Reverse the string '{s}'.", "What is '{s}' spelled backwards?", "Write '{s}' in reverse order.",
                    "Reverse the letters of {s}."]).format(s=s)
    st = rng.choice(["'{s}' reversed is '{r}'.", "Backwards, {s} is {r}."]).format(s=s, r=ans)
    dis = [s] + _perturb(rng, ans)
    return dict(skill="reverse", key=("reverse", s), question=q, answer=ans, distractors=dis, statement=st)


def p_sort(rng):
    n = rng.randint(3, 6)
    if rng.random() < 0.6:
        s = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
        q = rng.choice(["Sort the letters of '{s}' in alphabetical order.", "Put the letters '{s}' in order.",
                        "Arrange the characters of {s} alphabetically."])
    else:
        s = "".join(rng.choice("0123456789") for _ in range(n))
        q = rng.choice(["Sort the digits of {s} in ascending order.", "Put the digits of {s} in increasing order.",
                        "Arrange the digits '{s}' from smallest to largest."])
    ans = "".join(sorted(s))
    if ans == s or len(set(s)) == 1:
        return p_sort(rng)
    st = rng.choice(["'{s}' sorted is '{r}'.", "In order, {s} becomes {r}."]).format(s=s, r=ans)
    dis = [s, ans[::-1]] + _perturb(rng, ans)
    return dict(skill="sort", key=("sort", s), question=q.format(s=s), answer=ans, distractors=dis, statement=st)


def p_convert(rng):
    fr, to, f = rng.choice(UNITS)
    v = rng.randint(2, 99)
    ans = v * f
    q = rng.choice(["How many {to} are in {v} {fr}?", "Convert {v} {fr} to {to}.", "{v} {fr} is how many {to}?",
                    "What is {v} {fr} in {to}?"]).format(to=to, v=v, fr=fr)
    st = rng.choice(["{v} {fr} is {a} {to}.", "{v} {fr} equals {a} {to}."]).format(v=v, fr=fr, a=ans, to=to)
    c = set()
    for g in (10, 100, 1000, 60, 24, 12, 7):
        if g != f:
            c.add(v * g)
    c.update({(v + 1) * f, (v - 1) * f, ans + 10, ans - 10, ans * 10})
    dis = [str(x) for x in sorted(c) if x > 0 and x != ans]
    return dict(skill="convert", key=("convert", fr, v), question=q, answer=str(ans), distractors=dis, statement=st)


SAMPLERS = {"add": p_add, "sub": p_sub, "compare": p_compare, "count": p_count, "reverse": p_reverse,
            "sort": p_sort, "convert": p_convert}


def sample(rng, skill, split, mc):
    """A problem of `skill` whose key falls in `split`."""
    while True:
        if skill == "compare":
            p = p_compare(rng, 4 if mc else 2)
        else:
            p = SAMPLERS[skill](rng)
        if split_of(p["key"]) == split:
            return p


def _first_char_variants(rng, ans):
    """Strings like `ans` (same length and alphabet) with a different first character, one per possible first
    character, in random order."""
    if ans.isdigit():
        firsts = "123456789" if len(ans) > 1 else "0123456789"
    else:
        firsts = "abcdefghijklmnopqrstuvwxyz"
    out = [c + ans[1:] for c in firsts if c != ans[0]]
    rng.shuffle(out)
    return out


def make_options(rng, p, answer_pos):
    """Four options: the answer and three distractors, all with different first characters. Plausible distractors
    (the sampler's near misses) come first; the answer's own variants with another first character fill up.
    Distinct first characters make the item decidable from the answer's first token, the way a language model
    reads options; a model this small does not learn to compare whole multi-token options within the CPU
    training budget (the answer letter stayed at chance for thousands of steps with near misses that share the
    first character; README, "The demo model")."""
    ans = p["answer"]
    if p.get("fixed_options"):
        picked = [d for d in p["distractors"] if d != ans][:3]
    else:
        dis = list(dict.fromkeys(d for d in p["distractors"] if d != ans))
        rng.shuffle(dis)
        picked, firsts = [], {ans[0]}
        for d in dis + _first_char_variants(rng, ans):
            if d[0] not in firsts and d != ans:
                picked.append(d)
                firsts.add(d[0])
            if len(picked) == 3:
                break
    rng.shuffle(picked)
    opts = picked[:answer_pos] + [ans] + picked[answer_pos:]
    assert len({o[0] for o in opts}) == 4, opts
    return dict(zip(LETTERS, opts))


def gen_text(p):
    return "Q: " + p["question"] + "\nA: " + p["answer"]


def gen_prompt(p):
    return "Q: " + p["question"] + "\nA:"


def mc_prompt(question, options):
    return "Question: " + question + "\n" + "".join(f"{L}. {options[L]}\n" for L in LETTERS) + "Answer:"


def mc_text(question, options, letter):
    return mc_prompt(question, options) + " " + letter


# ------------------------------------------------------------------------------------------------------------
# Correctness checks, independent of the samplers.
# ------------------------------------------------------------------------------------------------------------

def check_answer(skill, key, answer):
    if skill == "add":
        return int(answer) == key[1] + key[2]
    if skill == "sub":
        return int(answer) == key[1] - key[2]
    if skill == "compare":
        return int(answer) == (max(key[3]) if key[2] == "max" else min(key[3]))
    if skill == "count":
        return int(answer) == sum(1 for ch in key[1] if ch == key[2])
    if skill == "reverse":
        return answer == "".join(reversed(key[1]))
    if skill == "sort":
        return answer == "".join(sorted(key[1]))
    if skill == "convert":
        return int(answer) == key[2] * dict((u[0], u[2]) for u in UNITS)[key[1]]
    raise ValueError(skill)


# ------------------------------------------------------------------------------------------------------------
# Training corpus
# ------------------------------------------------------------------------------------------------------------

# Kinds of training example and their share.
MIX = (("gen", 0.35), ("mc", 0.55), ("statement", 0.10))
# "pick" is a training aid, not a skill of the suite: a multiple-choice item whose answer is picked by a property
# each option shows on its own (the largest / smallest single digit; the only number among words, the only word
# among numbers). The demo model's shape learns the largest-digit pick alone to 99.7 % within 500 steps, and with
# it the mechanism that every multiple-choice item needs: attend to the option that has a feature and copy its
# letter. They open training (stage 0) and stay at 5 % of the main mixture.
PICK_SHARE = 0.05            # in the main mixture
WARMUP_EXAMPLES = 30000      # stage 0: the first examples trained on, half of them "pick"


def pick_example(rng):
    kind = rng.random()
    if kind < 0.6:
        vals = rng.sample("0123456789", 4)
        largest = rng.random() < 0.5
        ans = max(vals) if largest else min(vals)
        q = rng.choice(["Which number is the largest?", "Which of these numbers is the biggest?"] if largest else
                       ["Which number is the smallest?", "Which of these numbers is the lowest?"])
        key = ("compare", 4, "max" if largest else "min", tuple(sorted(int(v) for v in vals)))
    else:
        words = rng.sample(WORDS, 4)
        nums = [str(rng.randint(2, 999)) for _ in range(4)]
        if rng.random() < 0.5:
            vals, ans, q = words[:3] + nums[:1], nums[0], "Which option is a number?"
        else:
            vals, ans, q = nums[:3] + words[:1], words[0], "Which option is a word?"
        rng.shuffle(vals)
        key = ("pick", q, tuple(vals))
    opts = dict(zip(LETTERS, vals))
    L = LETTERS[vals.index(ans)]
    text = mc_text(q, opts, L)
    return text, "pick", key, [[len(mc_prompt(q, opts)), len(text)]]


def training_examples(seed, n, split="train", pick_share=PICK_SHARE):
    """n (text, skill, key, answer_spans) tuples; text has no trailing <|endoftext|>; answer_spans = [[start, end]]
    character spans of the answer parts (" 85", " C", the end of a statement), which
    train.py weights fully in the loss."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < pick_share:
            out.append(pick_example(rng))
            continue
        skill = rng.choice(SKILLS)
        r = rng.random()
        acc = 0.0
        for kind, share in MIX:
            acc += share
            if r < acc:
                break
        p = sample(rng, skill, split, kind == "mc")
        assert check_answer(skill, p["key"], p["answer"])
        if kind == "gen":
            text = gen_text(p)
            astart = len(gen_prompt(p))
        elif kind == "statement":
            text = p["statement"]
            astart = text.rindex(p["answer"])
        elif kind == "mc":
            pos = rng.randrange(4)
            opts = make_options(rng, p, pos)
            text = mc_text(p["question"], opts, LETTERS[pos])
            astart = len(mc_prompt(p["question"], opts))
        out.append((text, skill, p["key"], [[astart, len(text)]]))
    return out


def write_train(path, seed, n, warmup=WARMUP_EXAMPLES):
    """Stage 0 (`warmup` examples, half "pick") then stage 1 (`n` examples of the main mixture); train.py trains
    on all stage-0 rows first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stages = [(0, training_examples(seed + 1, warmup, pick_share=0.5)), (1, training_examples(seed, n))]
    with open(path, "w", encoding="utf-8") as f:
        for stage, ex in stages:
            for text, skill, key, spans in ex:
                f.write(json.dumps({"stage": stage, "skill": skill, "key": list(key), "text": text,
                                    "answer_spans": spans}) + "\n")
    return stages[0][1] + stages[1][1]


# ------------------------------------------------------------------------------------------------------------
# Task suite
# ------------------------------------------------------------------------------------------------------------

def suite_mc(rng, split, per_skill):
    items = []
    for skill in SKILLS:
        seen = set()
        positions = [i % 4 for i in range(per_skill)]
        rng.shuffle(positions)
        n = 0
        while n < per_skill:
            p = sample(rng, skill, split, True)
            if p["key"] in seen:
                continue
            seen.add(p["key"])
            opts = make_options(rng, p, positions[n])
            assert check_answer(skill, p["key"], p["answer"])
            n += 1
            items.append({"id": f"{split}-{skill}-{n:03d}", "skill": skill, "question": p["question"],
                          "options": opts, "answer": LETTERS[positions[n - 1]],
                          "prompt": mc_prompt(p["question"], opts), "key": list(p["key"])})
    return items


def suite_gen(rng, per_skill):
    items = []
    for skill in SKILLS:
        seen = set()
        n = 0
        while n < per_skill:
            p = sample(rng, skill, "generative", False)
            if p["key"] in seen:
                continue
            seen.add(p["key"])
            n += 1
            items.append({"id": f"gen-{skill}-{n:03d}", "skill": skill, "prompt": gen_prompt(p),
                          "answer": p["answer"], "key": list(p["key"])})
    return items


def write_jsonl(path, items):
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_suite(out, seed, eval_n, ref_n, gen_n):
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    ev = suite_mc(rng, "eval", eval_n)
    ref = suite_mc(rng, "reference", ref_n)
    gen = suite_gen(rng, gen_n)
    write_jsonl(os.path.join(out, "eval.jsonl"), ev)
    write_jsonl(os.path.join(out, "reference.jsonl"), ref)
    write_jsonl(os.path.join(out, "generative.jsonl"), gen)
    return ev, ref, gen


def dev_set(seed=99, per_skill=40):
    """Multiple-choice items for monitoring during training (dev split; not shipped)."""
    return suite_mc(random.Random(seed), "dev", per_skill)


PROMPTS_HEADER = """# Routescope demo prompts

Prompts for the bundled demo model (media/demo-model). Each "## " section is one prompt: its text is everything
under the heading, without the surrounding blank lines. The problems come from the held-out "generative" split of
tools/demo/corpus.py (never seen in training) and use the training formats: "Q: <question>" then "A:" on the next
line for a short answer; "Question: <question>", options "A. " to "D. " and "Answer:" for multiple choice (the
next token is " A", " B", " C" or " D").
Regenerate: /usr/bin/python3 tools/demo/corpus.py prompts --out media/demo.prompts.md
"""

SKILL_TITLES = {"add": "Addition", "sub": "Subtraction", "compare": "Comparison", "count": "Counting letters",
                "reverse": "Reversing a string", "sort": "Sorting characters", "convert": "Unit conversion"}


def demo_prompts(seed=2024):
    """(title, prompt) pairs: one short-answer prompt per skill, then three multiple-choice ones."""
    rng = random.Random(seed)
    out = []
    for skill in SKILLS:
        while True:
            p = sample(rng, skill, "generative", False)
            # short, plain problems read best in a demo (first prompt: 2-digit addition, the parity fixture's)
            if skill in ("add", "sub") and (len(p["answer"]) > 3 or "apples" in p["question"] or "pens" in p["question"]):
                continue
            if skill in ("count", "reverse") and p["key"][1] not in WORDS:
                continue
            if skill == "add" and not out and not all(len(str(x)) == 2 for x in p["key"][1:]):
                continue
            break
        out.append((SKILL_TITLES[skill], gen_prompt(p)))
    for skill in ("add", "reverse", "convert"):
        p = sample(rng, skill, "generative", True)
        opts = make_options(rng, p, rng.randrange(4))
        out.append((SKILL_TITLES[skill] + " (multiple choice)", mc_prompt(p["question"], opts)))
    return out


def write_prompts(path, seed=2024):
    with open(path, "w", encoding="utf-8") as f:
        f.write(PROMPTS_HEADER)
        for title, prompt in demo_prompts(seed):
            f.write(f"\n## {title}\n\n{prompt}\n")


def _k(key):
    return repr(tuple(tuple(x) if isinstance(x, list) else x for x in key))


def check_disjoint(train_path, suite_dir):
    train = read_jsonl(train_path)
    train_keys = {_k(t["key"]) for t in train}
    train_text = "\n".join(t["text"] for t in train)
    sets = {n: read_jsonl(os.path.join(suite_dir, n + ".jsonl")) for n in ("eval", "reference", "generative")}
    keysets = {}
    for name, items in sets.items():
        ks = [_k(it["key"]) for it in items]
        assert len(ks) == len(set(ks)), f"duplicate keys in {name}"
        keysets[name] = set(ks)
        for it in items:
            assert check_answer(it["skill"], tuple(tuple(x) if isinstance(x, list) else x for x in it["key"]),
                                it["options"][it["answer"]] if "options" in it else it["answer"]), it
            if "options" in it:
                assert it["prompt"] == mc_prompt(it["question"], it["options"])
                assert len(set(it["options"].values())) == 4
        overlap = keysets[name] & train_keys
        assert not overlap, f"{name} shares {len(overlap)} problems with the training corpus"
        # the exact prompt text never occurs in training (questions may: e.g. "Which number is the largest?")
        for it in items:
            assert it["prompt"] not in train_text, f"{name} prompt found in training text: {it['id']}"
    names = list(keysets)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not (keysets[names[i]] & keysets[names[j]]), f"{names[i]} and {names[j]} overlap"
    return {n: len(v) for n, v in sets.items()}, len(train)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=".cache/demo/train.jsonl")
    t.add_argument("--examples", type=int, default=230000)
    t.add_argument("--seed", type=int, default=1234)
    s = sub.add_parser("suite")
    s.add_argument("--out", default="media/tasks")
    s.add_argument("--seed", type=int, default=4321)
    s.add_argument("--eval-per-skill", type=int, default=50)
    s.add_argument("--ref-per-skill", type=int, default=50)
    s.add_argument("--gen-per-skill", type=int, default=16)
    pr = sub.add_parser("prompts")
    pr.add_argument("--out", default="media/demo.prompts.md")
    pr.add_argument("--seed", type=int, default=2024)
    c = sub.add_parser("check")
    c.add_argument("--train", default=".cache/demo/train.jsonl")
    c.add_argument("--suite", default="media/tasks")
    a = ap.parse_args()
    if a.cmd == "train":
        ex = write_train(a.out, a.seed, a.examples)
        print(f"wrote {len(ex)} examples to {a.out}")
    elif a.cmd == "suite":
        ev, ref, gen = write_suite(a.out, a.seed, a.eval_per_skill, a.ref_per_skill, a.gen_per_skill)
        print(f"wrote {len(ev)} eval, {len(ref)} reference, {len(gen)} generative items to {a.out}")
    elif a.cmd == "prompts":
        write_prompts(a.out, a.seed)
        print(f"wrote {a.out}")
    else:
        counts, n = check_disjoint(a.train, a.suite)
        print(f"ok: {counts} disjoint from each other and from {n} training examples; answers verified")


if __name__ == "__main__":
    sys.exit(main())
