from saekit.bench.run import main

raise SystemExit(main())
