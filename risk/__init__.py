"""Risk core, pure and I/O-free: features → CEL rules → decision (DESIGN §9).

``features`` builds the CEL activation (the rule authors' contract), ``rules`` compiles and
evaluates rules, ``decision`` turns hits into allow/challenge/review/block with reasons, ``geo``
maps BINs, IPs and phones to countries, ``defaults`` turns configured rules into specs.
"""
