from gongji.cli import app

app()
