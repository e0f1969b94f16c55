// The Function App's storage account: the Functions host's own storage (AzureWebJobsStorage),
// the deployment-package container, the refresh queue (and its poison queue), and — created
// per company by company.bicep — knowledge containers. Shared keys are off: everything is
// reached by Entra identity, so no template or app setting holds an account key.

param location string
param tags object = {}
param name string
@description('Principal id of SOPHIA\'s user-assigned identity.')
param sophiaPrincipalId string
@description('Container holding the Function App\'s deployment package (Flex Consumption).')
param deploymentContainerName string = 'app-package'
@description('Queue of refresh jobs (SOPHIA_REFRESH_QUEUE_URL, the refresh-worker trigger).')
param refreshQueueName string = 'sophia-refresh'

// Built-in roles (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    // checkov:skip=CKV_AZURE_206: the data here is rebuildable (deployment package, queue of refresh jobs, host leases); knowledge containers a company needs geo-redundant live in the company's own account
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowCrossTenantReplication: false
    // checkov:skip=CKV_AZURE_59: a Flex Consumption app without VNet integration reaches its host storage over the public endpoint; shared keys are off, so every call needs an Entra token and a data role
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // checkov:skip=CKV_AZURE_35: a Flex Consumption app without VNet integration reaches its storage over the public endpoint; access is Entra-only (shared keys off)
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource refreshQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: refreshQueueName
}

// Where the Functions host moves a refresh message after maxDequeueCount (host.json) failures.
resource refreshPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${refreshQueueName}-poison'
}

// The Functions host keeps its leases, keys and timers in AzureWebJobsStorage blobs and reads
// the deployment package from the container: Blob Data Owner on the account is what the host
// documents for identity-based AzureWebJobsStorage.
resource hostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, sophiaPrincipalId, storageBlobDataOwner)
  scope: account
  properties: {
    principalId: sophiaPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
  }
}

// SOPHIA enqueues refresh jobs; the host's queue trigger peeks, dequeues, deletes, and moves a
// failed message to the poison queue: Queue Data Contributor on those two queues only.
resource refreshQueueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(refreshQueue.id, sophiaPrincipalId, storageQueueDataContributor)
  scope: refreshQueue
  properties: {
    principalId: sophiaPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
  }
}

resource refreshPoisonQueueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(refreshPoisonQueue.id, sophiaPrincipalId, storageQueueDataContributor)
  scope: refreshPoisonQueue
  properties: {
    principalId: sophiaPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainerName}'
output refreshQueueName string = refreshQueue.name
output refreshQueueUrl string = '${account.properties.primaryEndpoints.queue}${refreshQueueName}'
