#!/usr/bin/env python3
"""Generate the labelled redaction corpus (corpus.jsonl) deterministically.

Each line: {"text": str, "expect": [{"type": T, "value": V}], "class": C}.
`expect` empty means a benign line: any finding in it is a false positive.
Run: python3 gen_corpus.py > corpus.jsonl
"""
import json, random, string

R = random.Random(20261122)

def luhn_complete(prefix, length):
    d = [int(c) for c in prefix]
    while len(d) < length - 1:
        d.append(R.randrange(10))
    for check in range(10):
        x = d + [check]
        s = 0
        for i, v in enumerate(reversed(x)):
            if i % 2 == 1:
                v *= 2
                if v > 9: v -= 9
            s += v
        if s % 10 == 0:
            return "".join(map(str, x))

def luhn_bad(prefix, length):
    good = luhn_complete(prefix, length)
    last = (int(good[-1]) + 1 + R.randrange(8)) % 10
    return good[:-1] + str(last)

def group(num, sep, sizes):
    out, i = [], 0
    for s in sizes:
        out.append(num[i:i+s]); i += s
    if i < len(num): out.append(num[i:])
    return sep.join(out)

def card():
    kind = R.choice(["visa", "mc", "amex", "disc", "mc2"])
    if kind == "visa": n = luhn_complete("4", 16)
    elif kind == "mc": n = luhn_complete(str(R.randint(51, 55)), 16)
    elif kind == "mc2": n = luhn_complete(str(R.randint(2221, 2720)), 16)
    elif kind == "amex": n = luhn_complete(R.choice(["34", "37"]), 15)
    else: n = luhn_complete("6011", 16)
    style = R.choice(["plain", "space", "dash"])
    sizes = [4, 6, 5] if len(n) == 15 else [4, 4, 4, 4]
    if style == "plain": return n
    return group(n, " " if style == "space" else "-", sizes)

def iban_check(cc, bban):
    s = bban + cc + "00"
    num = "".join(str(int(c, 36)) for c in s)
    return "%02d" % (98 - int(num) % 97)

IBAN_FMT = {"DE": "n18", "GB": "a4n14", "FR": "n10a11n2", "NL": "a4n10", "ES": "n20", "IT": "a1n10a12", "BE": "n12", "CH": "n5a12"}

def iban():
    cc = R.choice(list(IBAN_FMT))
    fmt = IBAN_FMT[cc]
    bban = ""
    i = 0
    while i < len(fmt):
        kind = fmt[i]; j = i + 1
        while j < len(fmt) and fmt[j].isdigit(): j += 1
        n = int(fmt[i+1:j])
        bban += "".join(R.choice(string.digits if kind == "n" else string.ascii_uppercase + string.digits) for _ in range(n))
        i = j
    full = cc + iban_check(cc, bban) + bban
    if R.random() < 0.6:
        return " ".join(full[k:k+4] for k in range(0, len(full), 4))
    return full

def ssn():
    while True:
        a = R.randint(1, 899)
        if a != 666: break
    g, s = R.randint(1, 99), R.randint(1, 9999)
    return "%03d-%02d-%04d" % (a, g, s)

FIRST = ["alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "olivia", "peggy", "trent", "victor", "wendy"]
DOMAINS = ["example.com", "corp.example.org", "mail.acme.io", "uni.example.ac.uk", "example.de", "service.example.net"]

def email():
    f = R.choice(FIRST)
    local = R.choice([f, f + "." + R.choice(FIRST), f + str(R.randint(1, 999)), f + "+tag", f + "_" + R.choice(FIRST)])
    return local + "@" + R.choice(DOMAINS)

def phone():
    k = R.randrange(6)
    if k == 0: return "+1 %d%02d %d%02d %04d" % (R.randint(2, 9), R.randint(0, 99), R.randint(2, 9), R.randint(0, 99), R.randint(0, 9999))
    if k == 1: return "(%d%02d) %d%02d-%04d" % (R.randint(2, 9), R.randint(0, 99), R.randint(2, 9), R.randint(0, 99), R.randint(0, 9999))
    if k == 2: return "%d%02d-%d%02d-%04d" % (R.randint(2, 9), R.randint(0, 99), R.randint(2, 9), R.randint(0, 99), R.randint(0, 9999))
    if k == 3: return "+44 20 %04d %04d" % (R.randint(1000, 9999), R.randint(0, 9999))
    if k == 4: return "+49 30 %d" % R.randint(1000000, 99999999)
    return "+33 1 %02d %02d %02d %02d" % tuple(R.randint(0, 99) for _ in range(4))

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]

def dob():
    y, m, d = R.randint(1940, 2005), R.randint(1, 12), R.randint(1, 28)
    k = R.randrange(4)
    if k == 0: v = "%04d-%02d-%02d" % (y, m, d)
    elif k == 1: v = "%02d/%02d/%04d" % (m, d, y)
    elif k == 2: v = "%s %d, %d" % (MONTHS[m-1], d, y)
    else: v = "%d %s %d" % (d, MONTHS[m-1], y)
    label = R.choice(["DOB:", "Date of birth:", "date of birth", "born on", "Birthdate:", "D.O.B."])
    return label, v

def rnd(alpha, n):
    return "".join(R.choice(alpha) for _ in range(n))

AN = string.ascii_letters + string.digits
UP = string.ascii_uppercase + string.digits

def secret():
    k = R.randrange(13)
    if k == 0: return "AWS_KEY", "AKIA" + rnd(UP, 16)
    if k == 1: return "GITHUB_TOKEN", R.choice(["ghp_", "gho_", "ghs_"]) + rnd(AN, 36)
    if k == 2: return "GITLAB_TOKEN", "glpat-" + rnd(AN + "_-", 20)
    if k == 3: return "SLACK_TOKEN", "xoxb-" + rnd(string.digits, 11) + "-" + rnd(string.digits, 12) + "-" + rnd(AN, 24)
    if k == 4: return "STRIPE_KEY", R.choice(["sk_live_", "rk_live_", "sk_test_"]) + rnd(AN, 24)
    if k == 5: return "GOOGLE_API_KEY", "AIza" + rnd(AN + "_-", 34) + R.choice("abc")
    if k == 6: return "OPENAI_KEY", "sk-proj-" + rnd(AN, 48)
    if k == 7: return "ANTHROPIC_KEY", "sk-ant-api03-" + rnd(AN, 80)
    if k == 8: return "JWT", "eyJhbGciOiJIUzI1NiJ9." + "eyJ" + rnd(AN, 30) + "." + rnd(AN + "_-", 43).rstrip("-_") + "x"
    if k == 9: return "PRIVATE_KEY", "-----BEGIN RSA PRIVATE KEY-----\n" + rnd(AN + "+/", 64) + "\n" + rnd(AN + "+/", 40) + "=\n-----END RSA PRIVATE KEY-----"
    if k == 10: return "BEARER_TOKEN", rnd(AN + "._-", 32) + "x"
    if k == 11: return "SECRET", rnd(AN + "!#$%&*", 16)
    return "AWS_SECRET", rnd(AN + "/+", 40)

TEMPLATES = [
    "Please contact {v} about the renewal.",
    "My details: {v}. Thanks!",
    "{v}",
    "can you check why {v} was rejected yesterday",
    "Customer wrote: \"reach me at {v}\" and then hung up.",
    "Forwarding the record ({v}) for review.",
    "Ligne 3 : {v} — merci.",
]

def labelled(t, v):
    if t == "BEARER_TOKEN": return "Authorization: Bearer " + v
    if t == "SECRET": return R.choice(["password=", "db_password: ", "client_secret = ", "PASSWORD=", "api_key: "]) + v
    if t == "AWS_SECRET": return R.choice(["aws_secret_access_key = ", "AWS_SECRET_ACCESS_KEY="]) + v
    if t == "SSN": return R.choice(["SSN ", "ssn: ", "social security number ", ""]) + v
    if t == "IBAN": return R.choice(["IBAN ", "account ", "pay to "]) + v
    if t == "CARD": return R.choice(["card ", "cc: ", "my visa is ", ""]) + v
    return v

lines = []
def add(text, expect, cls):
    lines.append({"text": text, "expect": [{"type": t, "value": v} for t, v in expect], "class": cls})

for _ in range(150): v = email(); add(R.choice(TEMPLATES).format(v=v), [("EMAIL", v)], "EMAIL")
for _ in range(150): v = card(); add(R.choice(TEMPLATES).format(v=labelled("CARD", v)), [("CARD", v)], "CARD")
for _ in range(150): v = phone(); add(R.choice(TEMPLATES).format(v="call " + v), [("PHONE", v)], "PHONE")
for _ in range(120): v = ssn(); add(R.choice(TEMPLATES).format(v=labelled("SSN", v)), [("SSN", v)], "SSN")
for _ in range(120): v = iban(); add(R.choice(TEMPLATES).format(v=labelled("IBAN", v)), [("IBAN", v)], "IBAN")
for _ in range(100):
    label, v = dob(); add(R.choice(TEMPLATES).format(v=label + " " + v), [("DOB", v)], "DOB")
for _ in range(260):
    t, v = secret(); add(R.choice(TEMPLATES).format(v=labelled(t, v)), [(t, v)], t)
# mixed lines
for _ in range(60):
    e, c, s = email(), card(), ssn()
    add("Name: Dana, email %s, card %s, SSN %s." % (e, c, s), [("EMAIL", e), ("CARD", c), ("SSN", s)], "MIXED")

# benign look-alikes
def uuid(): return "%08x-%04x-%04x-%04x-%012x" % (R.getrandbits(32), R.getrandbits(16), R.getrandbits(16), R.getrandbits(16), R.getrandbits(48))
BENIGN = [
    ("uuid", lambda: "request id " + uuid() + " failed"),
    ("order", lambda: "order #%d-%d shipped" % (R.randint(10000, 9999999), R.randint(10, 99))),
    ("order", lambda: "Order number %d is delayed" % R.randint(100000000, 999999999)),
    ("version", lambda: "upgrade to v%d.%d.%d or %d.%d.%d.%d" % tuple(R.randint(0, 30) for _ in range(7))),
    ("luhn-invalid", lambda: "reference " + luhn_bad("4", 16)),
    ("luhn-invalid", lambda: "tracking " + group(luhn_bad("5" + str(R.randint(1, 5)), 16), " ", [4, 4, 4, 4])),
    ("git-sha", lambda: "commit %040x reverted" % R.getrandbits(160)),
    ("git-sha", lambda: "see %07x and %012x" % (R.getrandbits(28), R.getrandbits(48))),
    ("timestamp", lambda: "at %d-%02d-%02dT%02d:%02d:%02dZ" % (R.randint(2000, 2030), R.randint(1, 12), R.randint(1, 28), R.randint(0, 23), R.randint(0, 59), R.randint(0, 59))),
    ("timestamp", lambda: "epoch %d ms" % R.randint(1_600_000_000_000, 1_800_000_000_000)),
    ("timestamp", lambda: "logged %d-%02d-%02d %02d:%02d:%02d.%03d" % (R.randint(2000, 2030), R.randint(1, 12), R.randint(1, 28), R.randint(0, 23), R.randint(0, 59), R.randint(0, 59), R.randint(0, 999))),
    ("number", lambda: "revenue was $%d,%03d,%03d in Q%d" % (R.randint(1, 999), R.randint(0, 999), R.randint(0, 999), R.randint(1, 4))),
    ("date", lambda: "meeting on %d-%02d-%02d at 10:30" % (R.randint(2000, 2030), R.randint(1, 12), R.randint(1, 28))),
    ("ssn-invalid", lambda: "code %03d-%02d-%04d" % (R.choice([0, 666, R.randint(900, 999)]), R.randint(1, 99), R.randint(1, 9999))),
    ("secret-lowentropy", lambda: "password: " + R.choice(["<your password>", "changeme", "********", "${DB_PASSWORD}", "aaaaaaaaaa"])),
    ("word", lambda: "the token count was %d and the password policy changed" % R.randint(100, 99999)),
    ("email-like", lambda: "use the @%s handle or user@localhost" % R.choice(FIRST)),
    ("ip", lambda: "server 10.%d.%d.%d responded" % (R.randint(0, 255), R.randint(0, 255), R.randint(1, 254))),
    ("isbn", lambda: "ISBN 978-%d-%02d-%06d-%d" % (R.randint(0, 9), R.randint(10, 99), R.randint(0, 999999), R.randint(0, 9))),
]
for _ in range(500):
    cls, f = R.choice(BENIGN)
    add(f(), [], "benign:" + cls)

for l in lines:
    print(json.dumps(l, ensure_ascii=False))
