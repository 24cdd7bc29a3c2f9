from obs_merlb.cli import main

raise SystemExit(main())
