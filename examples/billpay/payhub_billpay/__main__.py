from payhub_billpay.cli import main

raise SystemExit(main())
