from pgrouter_native.build import main

raise SystemExit(main())
