from sentistream.cli import main

raise SystemExit(main())
