from lift_ray.cli import main

raise SystemExit(main())
