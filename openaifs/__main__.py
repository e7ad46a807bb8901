from openaifs.cli import main

raise SystemExit(main())
