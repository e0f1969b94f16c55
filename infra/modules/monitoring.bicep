// Log Analytics workspace, workspace-based Application Insights, and the operator workbook
// (the KQL of the README's telemetry section).

param location string
param tags object = {}
param workspaceName string
param appInsightsName string
@description('Days the workspace keeps logs.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 90

resource workspace 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    // SOPHIA's exporter sends with the connection string's instrumentation key (no Entra
    // ingestion auth in opentelemetry-application-insights yet), so local auth stays on.
    DisableLocalAuth: false
  }
}

// The queries every operator asks first, as one workbook on the App Insights resource.
var workbookContent = loadJsonContent('workbook.json')

resource workbook 'Microsoft.Insights/workbooks@2022-04-01' = {
  name: guid(resourceGroup().id, appInsights.id, 'sophia-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'SOPHIA: companies, latency, tokens, failures'
    category: 'workbook'
    sourceId: appInsights.id
    serializedData: string(workbookContent)
  }
}

output appInsightsId string = appInsights.id
output appInsightsName string = appInsights.name
@description('Not a credential: it only lets a process send telemetry to this resource.')
output connectionString string = appInsights.properties.ConnectionString
output workspaceId string = workspace.id
output workbookId string = workbook.id
