from splitinfer.cli import main

raise SystemExit(main())
