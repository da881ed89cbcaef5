from pia_server.cli import main

raise SystemExit(main())
