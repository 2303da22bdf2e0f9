from depth_anything_fast.cli import main

raise SystemExit(main())
