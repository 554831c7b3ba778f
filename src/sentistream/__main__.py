from sentistream.launch import main

raise SystemExit(main())
