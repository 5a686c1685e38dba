from axialtrack.cli import main

raise SystemExit(main())
