"""The sandbox: simulators of the outside services the connectors talk to (acquirer, billers,
telecom operators, bank, e-wallet, FX feed, message sink), each a real server on its DESIGN port
speaking the real protocol. Outcomes are driven by test data (DESIGN §12); each has fault knobs."""
