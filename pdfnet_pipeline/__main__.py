from pdfnet_pipeline.cli import main

main()
