from cogvx_mini.experiments.ablations import main

main()
